from bertdeploy.cli import main

main()
