from artifactfs.cli import main

main()
