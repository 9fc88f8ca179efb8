from tether.main import main

main()
