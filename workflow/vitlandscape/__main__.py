from vitlandscape.cli import main

main()
