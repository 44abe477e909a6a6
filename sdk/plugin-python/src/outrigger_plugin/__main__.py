from outrigger_plugin.build import main

main()
