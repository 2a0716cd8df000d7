"""The repository's signing key: its OpenPGP fingerprints, checked against the ones expected."""

from __future__ import annotations


def openpgp_fingerprints(armored: str) -> list[str]:
    """Fingerprints (upper-case hex) of the public keys and subkeys in an ASCII-armored key block.

    v4 keys: SHA-1 over 0x99, the two-byte body length and the public-key packet's body;
    v5/v6 keys: SHA-256 over 0x9A/0x9B and a four-byte length (RFC 4880 12.2, RFC 9580 5.5.4).
    Raises ValueError for text that is no armored public key block.
    """
    import base64
    import hashlib

    lines = (armored or "").strip().splitlines()
    try:
        begin = next(i for i, line in enumerate(lines) if line.strip() == "-----BEGIN PGP PUBLIC KEY BLOCK-----")
        end = next(i for i, line in enumerate(lines) if line.strip() == "-----END PGP PUBLIC KEY BLOCK-----")
    except StopIteration:
        raise ValueError("not an ASCII-armored public key block") from None
    body = lines[begin + 1 : end]
    blank = next((i for i, line in enumerate(body) if not line.strip()), -1)
    data_lines = [line.strip() for line in body[blank + 1 :] if line.strip() and not line.startswith("=")]
    try:
        data = base64.b64decode("".join(data_lines), validate=True)
    except ValueError:
        raise ValueError("the armored key block is not valid base64") from None
    fingerprints = []
    position = 0
    while position < len(data):
        header = data[position]
        if not header & 0x80:
            raise ValueError("the key block holds no OpenPGP packets")
        if header & 0x40:  # new format: tag in the low six bits, then a variable length
            tag = header & 0x3F
            first = data[position + 1]
            if first < 192:
                length, position = first, position + 2
            elif first < 224:
                length, position = ((first - 192) << 8) + data[position + 2] + 192, position + 3
            elif first == 255:
                length, position = int.from_bytes(data[position + 2 : position + 6], "big"), position + 6
            else:
                raise ValueError("partial-length packets do not occur in keys")
        else:  # old format: tag in bits 5-2, length type in bits 1-0
            tag = (header >> 2) & 0x0F
            size = {0: 1, 1: 2, 2: 4}.get(header & 0x03)
            if size is None:
                raise ValueError("indeterminate-length packets do not occur in keys")
            length = int.from_bytes(data[position + 1 : position + 1 + size], "big")
            position += 1 + size
        packet = data[position : position + length]
        position += length
        if tag in (6, 14) and packet:
            version = packet[0]
            if version == 4:
                digest = hashlib.sha1(b"\x99" + len(packet).to_bytes(2, "big") + packet, usedforsecurity=False)
            elif version in (5, 6):
                prefix = b"\x9a" if version == 5 else b"\x9b"
                digest = hashlib.sha256(prefix + len(packet).to_bytes(4, "big") + packet)
            else:
                continue
            fingerprints.append(digest.hexdigest().upper())
    if not fingerprints:
        raise ValueError("the key block holds no public key")
    return fingerprints


def key_fingerprint_errors(armored: str, expected, where: str) -> list[str]:
    """Why the repository key is not the one expected ([] when it is, or nothing is expected).

    expected: full fingerprints (40 or 64 hex digits) or key ids (their last 8 or 16), spaces
    allowed; the key passes when one of its (sub)key fingerprints matches one of them.
    """
    wanted = [str(item).replace(" ", "").upper() for item in (expected or []) if str(item).strip()]
    if not wanted:
        return []
    try:
        found = openpgp_fingerprints(armored)
    except ValueError as error:
        return [f"the signing key of {where} cannot be read: {error}"]
    if any(fingerprint.endswith(item) for fingerprint in found for item in wanted):
        return []
    return [
        f"the signing key of {where} has fingerprint(s) {', '.join(found)}, none of "
        f"nvidia_driver_repo_key_fingerprints ({', '.join(wanted)}): a key that is not the repository's own would "
        "make apt or dnf trust whatever it signs. Check the key source (nvidia_driver_repo_key, "
        "nvidia_driver_repo_key_file, nvidia_driver_repo_key_url), or list this key's fingerprint"
    ]
