"""Test bots: synthetic numbered media (media.py) and aiortc peer connections built from the
server's ICE configuration (rtc.py). Signalling over the server's Socket.IO protocol comes later."""
