"""``python -m layerswap`` runs the CLI."""

from layerswap.cli import main

main()
