from local_server.cli import main

main()
