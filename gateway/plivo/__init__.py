"""Plivo's side of a call: the REST client, the call context carried in Dial headers, and
the REST transfer."""
