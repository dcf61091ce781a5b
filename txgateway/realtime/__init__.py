"""
The realtime relay: ``/v1/realtime`` WebSocket sessions passed through to a provider, frame by
frame, while each session's token usage is tallied.
"""
