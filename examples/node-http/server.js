'use strict';
// The smallest Node app for the handoff hooks: node:http + ws on the socket systemd passes.
//
// GET /            -> 200 "<RELEASE>\n", X-Release: <RELEASE>   (?sleep_ms=N: answer N ms later)
// GET /healthz     -> 200 "ok\n", X-Instance: <INSTANCE>; 200 while draining too
// GET /ws          -> WebSocket: sends RELEASE, then echoes every text message
const http = require('node:http');
const net = require('node:net');
const { WebSocketServer } = require('ws'); // Debian's node-ws: NODE_PATH=/usr/share/nodejs

const RELEASE = process.env.RELEASE || 'dev';
const INSTANCE = process.env.INSTANCE || '-';
const LAME_DUCK_MS = 500;
let draining = false; // handoff: set on SIGTERM

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/healthz') {
    // handoff: 200 while draining too: the health path speaks for the host, and the next
    // instance serves it; a balancer's check must never fail during a switch.
    return reply(res, 200, 'ok\n');
  }
  if (url.pathname === '/') {
    const sleepMs = Number(url.searchParams.get('sleep_ms') || 0);
    if (!Number.isInteger(sleepMs) || sleepMs < 0) return reply(res, 400, 'sleep_ms: not a number\n');
    if (sleepMs > 0) await new Promise((done) => setTimeout(done, Math.min(sleepMs, 600000)));
    return reply(res, 200, `${RELEASE}\n`);
  }
  reply(res, 404, 'not found\n');
});

function reply(res, status, body) {
  const headers = {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(body),
    'X-Release': RELEASE,
    'X-Instance': INSTANCE,
  };
  // handoff: while draining, every response closes its connection (keep-alive clients leave
  // after their current request and reconnect, landing on the new instance).
  if (draining) headers.Connection = 'close';
  res.writeHead(status, headers).end(body);
}

const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  if (new URL(req.url, 'http://localhost').pathname !== '/ws') return socket.destroy();
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.send(RELEASE);
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
});

// The socket systemd passes (LISTEN_FDS=1); behind the front (strategy: proxy) the hooks set
// PORT instead, and the same app listens on 127.0.0.1:$PORT.
server.listen(process.env.PORT ? { port: Number(process.env.PORT), host: '127.0.0.1' } : { fd: 3 });

// handoff: by default Node dies at once on SIGTERM (in-flight requests lost). Drain instead:
process.on('SIGTERM', () => {
  if (draining) return;
  draining = true;
  // Stop accepting (connections queued on the shared socket go to the new instance) and exit
  // once every connection has closed. net.Server's close: http.Server's (Node 19+) would also
  // close idle keep-alive connections right now, racing with their clients' next request.
  net.Server.prototype.close.call(server, () => process.exit(0));
  for (const ws of wss.clients) ws.close(1012, 'service restart');
  // After the lame duck, close what is still idle; in-flight requests finish, then close.
  setTimeout(() => server.closeIdleConnections(), LAME_DUCK_MS);
  // A WebSocket client that never answers the close would hold the exit: give up before
  // systemd's SIGKILL at TimeoutStopSec= (drain.budget, 30 s).
  setTimeout(() => process.exit(1), 25000).unref();
});
