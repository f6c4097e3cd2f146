"""The package's version and its distribution name on the Python package index.

The import name and the command stay `resnet`; the distribution is `resnet-toolkit`, because
`resnet` on the index is an unrelated 2017 package (`pip install resnet` would fetch that)."""
__version__ = "0.1.0"
DISTRIBUTION = "resnet-toolkit"


def install_hint(extra: str) -> str:
    """The pip command that installs one of the package's extras."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"
