"""Call policy in pure Python: who may be called and when, and where a transfer goes."""
