from phasepipe.cli import main

main()
