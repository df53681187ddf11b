from sra_rag.cli import main

main()
