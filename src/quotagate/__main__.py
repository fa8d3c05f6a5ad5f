from quotagate.cli import main

main()
