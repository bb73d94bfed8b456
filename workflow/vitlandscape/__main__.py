import sys

# guarded: the bench's worker processes (forkserver) import this module again
if __name__ == "__main__":
    from vitlandscape import warmstart
    warmstart.run_via_server(sys.argv[1:])  # ends the process when a warm-start server ran the job
    from vitlandscape.cli import main
    main()
