from vitlandscape.cli import main

# guarded: the bench's worker processes (forkserver) import this module again
if __name__ == "__main__":
    main()
