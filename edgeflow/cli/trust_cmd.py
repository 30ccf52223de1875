"""Signing bundles: ``edgeflow keygen`` and ``edgeflow sign`` (needs the optional cryptography).

Verification is an option of the commands that load a bundle (``--trusted-key``, ``--expect``).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgeflow.cli.common import JSON_OPT, command, emit


def register(app: typer.Typer) -> None:
    command(app, "keygen")(keygen)
    command(app, "sign")(sign)


def keygen(
    output: Path = typer.Option(..., "--output", "-o", help="Private key file to write (PEM, mode "
                                "0600); the public key goes to OUTPUT.pub."),
    as_json: bool = JSON_OPT,
) -> None:
    """Make an Ed25519 key pair for signing bundles (never overwrites a key).

    The same as: openssl genpkey -algorithm ed25519 -out KEY && openssl pkey -in KEY -pubout -out
    KEY.pub. Keep the private key off the robot; give the robot KEY.pub (--trusted-key).

    Example: edgeflow keygen -o ~/.edgeflow/release.key
    """
    from edgeflow.runtime.trust import generate_key, key_id, load_public_key

    priv, pub = generate_key(output)
    res = {"private_key": str(priv), "public_key": str(pub), "key_id": key_id(load_public_key(pub))}
    emit(res, as_json=as_json, human=f"wrote {escape(str(priv))} (private, keep it secret) and "
                                     f"{escape(str(pub))} (public, key id {res['key_id']})")


def sign(
    bundle: Path = typer.Argument(..., help="Bundle directory (verified before signing)."),
    key: Path = typer.Option(..., "--key", "-k", help="Ed25519 private key (PEM), from `edgeflow "
                             "keygen` or openssl."),
    as_json: bool = JSON_OPT,
) -> None:
    """Sign a bundle: write BUNDLE/manifest.sig, an Ed25519 signature of its fingerprint.

    Devices then load it with --trusted-key KEY.pub (or Session(trusted_keys=[...])) and refuse
    an unsigned bundle or one changed after signing. Rewriting the bundle (e.g. adding an INT8
    backbone) drops the signature: sign it again.

    Example: edgeflow sign runs/r20.bundle --key release.key
    """
    from edgeflow.runtime.trust import sign_bundle

    res = sign_bundle(bundle, key)
    emit(res, as_json=as_json, human=f"signed {escape(str(bundle))}: {res['fingerprint']} with key "
                                     f"{res['key_id']} -> {escape(res['file'])}")
