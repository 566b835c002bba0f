"""Test bots: aiortc users that make real calls against any deployment of the server.

`client.py` the Bot (signup marked isBot, media upload, Socket.IO invite/accept, room signalling,
TURN, summary), `media.py` numbered synthetic video, tone audio and frame-counting receivers,
`rtc.py` peer connections from the server's iceServers and the selected candidate pair,
`profile.py` the tiny selfie/intro uploads, `swarm.py` N bots in pairs. CLI: `python -m bots`.
"""
