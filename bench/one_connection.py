"""N non-streamed chat completions back to back on one keep-alive connection
to marathon's OpenAI route; every answer must be a 200."""
import socket
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
request = (
    b"POST /openai/v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
)
sock = socket.create_connection(("127.0.0.1", port))
answers = sock.makefile("rb")
for _ in range(n):
    sock.sendall(request)
    status = answers.readline()
    if b" 200 " not in status:
        sys.exit(f"not a 200: {status!r}")
    length = 0
    while True:
        line = answers.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    answers.read(length)
