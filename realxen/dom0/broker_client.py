"""A stand-in device model: binds or unbinds MSI-X vectors through ptguard's broker socket.

Usage: broker_client.py SOCKET DOMID SBDF EPOCH TABLE_BASE OP ENTRY [PIRQ]
The assignment token `ptguard attach` printed comes from PTGUARD_TOKEN (without it the
broker serves only the domain's recorded device model).
Prints each reply line; exits 0 when the broker said ok.
"""
import json
import os
import socket
import sys

sock, domid, sbdf, epoch, table_base, op, entry = sys.argv[1:8]
req = {
    "op": op,
    "domid": int(domid),
    "sbdf": sbdf,
    "epoch": int(epoch),
    "kind": {"kind": "msix", "entry": int(entry), "table_base": int(table_base, 0)},
    "gvec": 0x40 + int(entry),
    "gflags": 0x10000,
    "gtable": 0xF1000000,
}
if os.environ.get("PTGUARD_TOKEN"):
    req["token"] = os.environ["PTGUARD_TOKEN"]
if op == "unbind":
    req["pirq"] = int(sys.argv[8])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sock)
s.sendall((json.dumps(req) + "\n").encode())
reply = b""
while not reply.endswith(b"\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    reply += chunk
print(reply.decode().strip())
sys.exit(0 if json.loads(reply).get("ok") else 1)
