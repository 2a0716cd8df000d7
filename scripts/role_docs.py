#!/usr/bin/env python3
"""Render each role's variable table from meta/argument_specs.yml into README.md.

The tables sit between `<!-- role-vars:NAME -->` and `<!-- /role-vars:NAME -->`
markers. `--check` exits 1 when README.md is out of date (CI runs that).
"""

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKER = re.compile(r"(<!-- role-vars:(?P<role>[\w-]+) -->\n).*?(<!-- /role-vars:(?P=role) -->)", re.DOTALL)


def role_options(role: str) -> dict:
    specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def describe(option: dict) -> str:
    description = option.get("description", "")
    if isinstance(description, list):
        description = " ".join(description)
    if option.get("choices"):
        description += " Choices: " + ", ".join(f"`{choice}`" for choice in option["choices"]) + "."
    return cell(re.sub(r"[OC]\(([^)]*)\)", r"`\1`", description))


def table(role: str) -> str:
    rows = ["| variable | type | default | description |", "| --- | --- | --- | --- |"]
    for name, option in role_options(role).items():
        default = option.get("default", "(required)" if option.get("required") else "")
        if not isinstance(default, str):
            default = yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
        default = f"`{cell(default)}`" if default != "" else '`""`'
        rows.append(f"| `{name}` | {option.get('type', 'str')} | {default} | {describe(option)} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    return MARKER.sub(lambda match: match.group(1) + table(match.group("role")) + match.group(3), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = parser.parse_args()
    current = README.read_text()
    rendered = render(current)
    if args.check:
        if rendered != current:
            print("README.md role variable tables are out of date: run scripts/role_docs.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
