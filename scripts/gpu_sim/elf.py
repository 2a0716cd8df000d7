"""A minimal Linux kernel module file, written without a toolchain, and a reader for it.

The simulated driver's nvidia.ko only has to satisfy kmod: `depmod` indexes it and
`modinfo` reads its fields from the `.modinfo` section, exactly as for a real module. It
is an ELF64 little-endian relocatable file (ET_REL, x86-64) with the sections

    .modinfo    "version=580.95.05\\0license=NVIDIA\\0name=nvidia\\0" (key=value strings)
    .symtab     only the null symbol (depmod reads the symbol table for dependencies)
    .strtab     an empty string table for it
    .shstrtab   the section names

and no code: it cannot be loaded (the lab's kernel has no module support anyway; the
lab's boot script "loads" it by writing /proc/driver/nvidia/version from its version).
"""

from __future__ import annotations

import struct

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_REL = 1
EM_X86_64 = 62

SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHF_ALLOC = 0x2

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # 64 bytes
SHDR = struct.Struct("<IIQQQQIIQQ")  # 64 bytes
SYM_SIZE = 24  # Elf64_Sym


def modinfo_section(fields: list[tuple[str, str]]) -> bytes:
    """key=value strings, each NUL-terminated, as the kernel's MODULE_INFO() lays them out."""
    out = b""
    for key, value in fields:
        if "\0" in key + value or "=" in key or not key:
            raise ValueError(f"bad modinfo field {key!r}={value!r}")
        out += f"{key}={value}".encode() + b"\0"
    return out


def module(fields: list[tuple[str, str]]) -> bytes:
    """The bytes of a .ko whose .modinfo holds these fields, in this order."""
    sections = [
        # name, type, flags, data, link, info, align, entsize
        (".modinfo", SHT_PROGBITS, SHF_ALLOC, modinfo_section(fields), 0, 0, 1, 0),
        (".symtab", SHT_SYMTAB, 0, b"\0" * SYM_SIZE, 3, 1, 8, SYM_SIZE),
        (".strtab", SHT_STRTAB, 0, b"\0", 0, 0, 1, 0),
    ]
    names = [b"", *(name.encode() for name, *_ in sections), b".shstrtab"]
    shstrtab = b"\0".join(names) + b"\0"
    offsets, at = [], 0
    for name in names:
        offsets.append(at)
        at += len(name) + 1
    sections.append((".shstrtab", SHT_STRTAB, 0, shstrtab, 0, 0, 1, 0))

    body = b""
    placed = []  # (offset, size) of each section's data in the file
    for _, _, _, data, _, _, align, _ in sections:
        pad = (-(EHDR.size + len(body))) % align
        body += b"\0" * pad
        placed.append((EHDR.size + len(body), len(data)))
        body += data
    body += b"\0" * ((-(EHDR.size + len(body))) % 8)
    shoff = EHDR.size + len(body)

    headers = SHDR.pack(0, SHT_NULL, 0, 0, 0, 0, 0, 0, 0, 0)
    for index, (_, kind, flags, _, link, info, align, entsize) in enumerate(sections):
        offset, size = placed[index]
        headers += SHDR.pack(offsets[index + 1], kind, flags, 0, offset, size, link, info, align, entsize)
    ident = ELF_MAGIC + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT]) + b"\0" * 9
    shnum, shstrndx = len(sections) + 1, len(sections)
    ehdr = EHDR.pack(ident, ET_REL, EM_X86_64, EV_CURRENT, 0, 0, shoff, 0, EHDR.size, 0, 0, SHDR.size, shnum, shstrndx)
    return ehdr + body + headers


def sections(data: bytes) -> dict[str, bytes]:
    """Section name -> contents of an ELF64 little-endian file (what `readelf -S` lists)."""
    if data[:4] != ELF_MAGIC or data[4] != ELFCLASS64 or data[5] != ELFDATA2LSB:
        raise ValueError("not an ELF64 little-endian file")
    fields = EHDR.unpack_from(data, 0)
    shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
    if shentsize != SHDR.size or shstrndx >= shnum:
        raise ValueError("unexpected section header table")
    headers = [SHDR.unpack_from(data, shoff + index * shentsize) for index in range(shnum)]
    names_at, names_size = headers[shstrndx][4], headers[shstrndx][5]
    names = data[names_at : names_at + names_size]
    found = {}
    for header in headers[1:]:
        name = names[header[0] : names.index(b"\0", header[0])].decode()
        found[name] = data[header[4] : header[4] + header[5]]
    return found


def modinfo(data: bytes) -> dict[str, str]:
    """The .modinfo fields of a module file, as `modinfo -F KEY` reads them."""
    fields = {}
    for item in sections(data)[".modinfo"].split(b"\0"):
        if item:
            key, _, value = item.decode().partition("=")
            fields[key] = value
    return fields
