from resablate_cli.app import main

main()
