"""``certlc inspect``: show what a certificate, chain, CSR, PKCS#7 or PFX file holds."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from cyclopts import Parameter

from certlc.cli._app import exit_with_error

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["inspect"]

# Common EKU OIDs, named for people reading the table; JSON output keeps the OIDs.
_EKU_NAMES = {
    "1.3.6.1.5.5.7.3.1": "serverAuth",
    "1.3.6.1.5.5.7.3.2": "clientAuth",
    "1.3.6.1.5.5.7.3.3": "codeSigning",
    "1.3.6.1.5.5.7.3.4": "emailProtection",
    "1.3.6.1.5.5.7.3.8": "timeStamping",
    "1.3.6.1.5.5.7.3.9": "OCSPSigning",
    "1.3.6.1.4.1.311.10.3.4": "EFS",
    "1.3.6.1.4.1.311.20.2.2": "smartcardLogon",
    "1.3.6.1.5.2.3.5": "KDC",
    "2.5.29.37.0": "anyExtendedKeyUsage",
}


# Certificate files are kilobytes; a bundle of thousands of certificates is a few megabytes.
# Anything bigger is not a certificate file (and /dev/zero never ends).
MAX_INPUT_BYTES = 16 * 1024 * 1024


def inspect(
    file: Path,
    /,
    *,
    password: Annotated[str | None, Parameter(show_default=False, env_var="CERTLC_PASSWORD")] = None,
    password_file: Annotated[Path | None, Parameter(show_default=False)] = None,
    as_json: Annotated[bool, Parameter(name="--json", negative="")] = False,
) -> None:
    """Show the certificates and certificate requests a file holds.

    Reads PEM (with text around blocks, CRLF, byte-order marks, keys first), DER, PKCS#7
    (including AD CS certnew.p7b and its Base 64 form), bare base64, PFX/PKCS#12 and CSRs.
    Private keys are never shown. A file that cannot be read exits with code 2.

    Parameters
    ----------
    file
        The certificate, chain, CSR, PKCS#7 or PFX file (/dev/stdin reads standard input).
    password
        Password of a PFX/PKCS#12 file or an encrypted PEM key (never printed). Prefer
        --password-file or $CERTLC_PASSWORD: a command-line password shows in ps and history.
    password_file
        Read the password from this file (its first line).
    as_json
        Print {"objects": [...], "format_notes": [...]} as JSON instead of tables.
    """
    from certlc.errors import InvalidInput
    from certlc.x509 import describe, load_any

    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").splitlines()[0] if password_file.stat().st_size \
                else ""
        except (OSError, UnicodeDecodeError) as exc:
            exit_with_error(f"cannot read the password file {password_file}: {getattr(exc, 'strerror', None) or exc}", 2)
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        exit_with_error(f"cannot read {file}: {exc.strerror or exc}", 2)
    if len(data) > MAX_INPUT_BYTES:
        exit_with_error(f"{file}: larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB, not a certificate file", 2)
    try:
        with warnings.catch_warnings():
            # cryptography warns about odd but readable input (non-positive serials, BER); the
            # command's output is the report, and stderr stays for the one error line.
            warnings.simplefilter("ignore")
            loaded = load_any(data, password.encode("utf-8") if password is not None else None)
            objects = [describe(c) for c in loaded.certificates] + [describe(c) for c in loaded.csrs]
    except InvalidInput as exc:
        exit_with_error(f"{file}: {exc.message}", 2)

    result: dict[str, Any] = {"objects": objects, "format_notes": loaded.format_notes}
    if loaded.has_private_key:
        result["has_private_key"] = True
        result["key_matches_cert"] = loaded.key_matches_cert
    if as_json:
        _print_json(result)
    else:
        _print_tables(file, result)


def _print_json(result: dict[str, Any]) -> None:
    import json

    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    # Names can hold any Unicode; write UTF-8 whatever the console's code page is.
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
    else:
        sys.stdout.flush()
        buffer.write(text.encode("utf-8"))
        buffer.flush()


def _print_tables(file: Path, result: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    objects = result["objects"]
    console.print(f"{file}: {len(objects)} object(s)", markup=False)
    if result["format_notes"]:
        console.print("format: " + "; ".join(result["format_notes"]), markup=False)
    if "key_matches_cert" in result:
        match = {True: "belongs to a certificate", False: "matches no certificate",
                 None: "encrypted; give its password to check it against the certificates"}[result["key_matches_cert"]]
        console.print(f"private key: present (not shown), {match}", markup=False)
    for number, obj in enumerate(objects, start=1):
        console.print(_table(obj, f"{number}. {obj['kind']}"))


def _table(obj: dict[str, Any], title: str) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")

    def row(name: str, value: str) -> None:
        table.add_row(Text(name), Text(value))  # Text: names may hold "[...]", which is not markup

    row("subject", obj["subject"])
    if obj["kind"] == "certificate":
        row("issuer", obj["issuer"])
        row("serial", obj["serial_hex"])
        row("valid", f"{obj['not_before']} .. {obj['not_after']}")
        row("thumbprint", obj["sha1_thumbprint"])
    key = obj["key"]
    row("key", " ".join(str(key[k]) for k in ("type", "curve", "size", "oid") if key.get(k) is not None))
    row("SAN", "\n".join(obj["san"]) or "-")
    row("EKU", "\n".join(f"{oid} ({_EKU_NAMES[oid]})" if oid in _EKU_NAMES else oid for oid in obj["eku"]) or "-")
    template = obj["template"]
    if template is not None:
        parts = [template["name"], template["oid"]]
        if template["major"] is not None:
            parts.append(f"v{template['major']}" + (f".{template['minor']}" if template["minor"] is not None else ""))
        row("template", " ".join(p for p in parts if p))
    if obj["kind"] == "certificate":
        row("CA", "yes" if obj["is_ca"] else "no")
    return table
