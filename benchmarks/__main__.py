from benchmarks.overhead import main

main()
