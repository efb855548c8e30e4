"""Plivo audio streams: the conversation over Plivo's bidirectional `<Stream>` WebSocket
(no pjsua2). See docs/plivo-audio-streams.md for what Plivo documents and where."""
