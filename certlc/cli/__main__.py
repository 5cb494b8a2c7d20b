from certlc.cli import main

main()
