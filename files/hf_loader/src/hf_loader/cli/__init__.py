"""What the package's CLIs share: exit codes (exitcodes), printing an outcome (output), and
the generated exit-code reference (reference). Imports nothing at package level, so that
errors.py can take ExitCode from here without a cycle."""
