"""What is kept of a call: the record store, its reports, PII redaction and recordings."""
