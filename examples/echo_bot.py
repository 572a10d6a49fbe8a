#!/usr/bin/env python3
"""An echo bot for `sotto daemon --json-rpc --socket PATH` (docs/JSON-RPC.md).

    sotto --profile bot daemon --json-rpc --socket /tmp/bot.sock &
    python3 examples/echo_bot.py /tmp/bot.sock

Answers every incoming message with "echo: <text>" in the same conversation.
Standard library only.
"""
import json
import socket
import sys

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
lines = sock.makefile("r", encoding="utf-8")
print("ready", flush=True)
next_id = 0


def call(method, **params):
    global next_id
    next_id += 1
    request = {"jsonrpc": "2.0", "id": next_id, "method": method, "params": params}
    sock.sendall((json.dumps(request) + "\n").encode())


for line in lines:
    msg = json.loads(line)
    if msg.get("method") == "message" and not msg["params"]["outgoing"]:
        m = msg["params"]
        # A one-to-one conversation is named after the peer (@handle); a group by its id.
        to = "@" + m["sender"] if m["conversation"] == m["sender"] else "#" + m["conversation_id"]
        call("send", to=to, text="echo: " + m["text"])
    elif "error" in msg:
        print("error:", msg["error"]["message"], file=sys.stderr)
