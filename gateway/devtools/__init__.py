"""Developer tools apart from the product: the softphone (`sipagent call`) and the demo."""
