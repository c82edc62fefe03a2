"""`python -m pktnin.cli`: the pktnin command line."""

from pktnin.cli import main

main()
