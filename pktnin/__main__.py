"""`python -m pktnin`: the pktnin command line."""

from pktnin.cli import main

main()
