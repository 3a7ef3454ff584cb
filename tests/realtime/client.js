// Connects to Confab with the official pusher-js client, configured as the seed product's front
// end would be, and prints what it sees as one JSON object per line on stdout. Driven by
// tests/api/realtime.rs; its settings come as JSON in the CONFAB_PUSHER_TEST environment variable:
// {key, host, port, authEndpoint, token, channels, timeoutMs}.
'use strict';

const Pusher = require('pusher-js');

const cfg = JSON.parse(process.env.CONFAB_PUSHER_TEST || '{}');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const pusher = new Pusher(cfg.key, {
  cluster: 'mt1',
  wsHost: cfg.host,
  wsPort: cfg.port,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
  channelAuthorization: {
    endpoint: cfg.authEndpoint,
    transport: 'ajax',
    headers: { Authorization: 'Bearer ' + cfg.token },
  },
});

pusher.connection.bind('state_change', (s) =>
  out({ type: 'state', previous: s.previous, current: s.current, socketId: pusher.connection.socket_id }),
);
pusher.connection.bind('error', (e) =>
  out({ type: 'connection_error', error: { type: e && e.type, code: e && e.data && e.data.code, message: e && e.data && e.data.message } }),
);

for (const name of cfg.channels || []) {
  const channel = pusher.subscribe(name);
  channel.bind('pusher:subscription_succeeded', () => out({ type: 'subscribed', channel: name }));
  channel.bind('pusher:subscription_error', (error) => out({ type: 'subscription_error', channel: name, error }));
  channel.bind_global((event, data) => {
    if (!event.startsWith('pusher:')) {
      out({ type: 'event', channel: name, event, data });
    }
  });
}

// The test ends the process; this is only a backstop so a forgotten client never lingers.
setTimeout(() => {
  out({ type: 'timeout' });
  process.exit(2);
}, cfg.timeoutMs || 60000);
