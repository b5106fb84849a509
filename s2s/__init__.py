"""s2s: workload identity for microservices, the SPIFFE way."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__", "version_info"]


def _package_version() -> str:
    try:
        return version("s2s")
    except PackageNotFoundError:  # run from a tree that is not installed
        return "unknown"


__version__ = _package_version()


def version_info() -> dict[str, str]:
    """What ``s2s-ca --version`` and ``s2s-agent --version`` print: the installed s2s version
    (the ``version`` label of the ``*_build_info`` metrics), and the Python, OpenSSL and
    ``cryptography`` the process runs on.

    >>> sorted(version_info())
    ['cryptography', 'openssl', 'python', 's2s']
    """
    import platform  # noqa: PLC0415  (only --version needs these)
    import ssl  # noqa: PLC0415

    try:
        crypto = version("cryptography")
    except PackageNotFoundError:
        crypto = "unknown"
    return {
        "s2s": _package_version(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "cryptography": crypto,
    }
