from pktnin.cli import main

main()
