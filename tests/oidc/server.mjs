// A real OAuth 2.0 / OpenID Connect authorization server (oidc-provider) on
// loopback, for marathon's OAuth tests.
//
// Usage: node server.mjs [PORT]   (PORT or $PORT; 0 = pick a free one)
// Prints one JSON line on stdout once listening:
//   {"issuer":"http://127.0.0.1:PORT","client_id":"marathon",...}
//
// Environment:
//   MARATHON_OIDC_ACCESS_TTL   access-token lifetime in seconds (default 5)
//   MARATHON_OIDC_REFRESH_TTL  refresh-token lifetime in seconds (default 86400)
//
// What it sets up (the behaviour marathon must survive):
//   - PKCE (S256) required for every authorization request;
//   - refresh tokens rotate on every use; presenting a used one revokes the
//     whole grant (oidc-provider's default reuse detection);
//   - device authorization grant (RFC 8628), introspection, revocation;
//   - opaque access tokens; `offline_access` (with prompt=consent) issues a
//     refresh token;
//   - a public native client `marathon` (no secret) whose loopback redirect
//     `http://127.0.0.1/callback` may use any port (RFC 8252 §7.3);
//   - a confidential client `resource-server` / `rs-secret` allowed to
//     introspect tokens;
//   - no browser needed: GET /interaction/:uid logs in the user named by
//     `?login=<user>` or by the request's `login_hint`, and grants consent.
//
// Test-only endpoints:
//   POST /test/revoke?user=<user>  destroys every grant of that user
//   GET  /test/stats               counters: refreshes, grant errors, revocations

import http from 'node:http';
import Provider from 'oidc-provider';

// stdout carries exactly one line (the ready line below); oidc-provider's
// notices go to console.info/log, so send those to stderr.
console.log = console.error;
console.info = console.error;

const USERS = {
  alice: { email: 'alice@example.com', name: 'Alice Example' },
  bob: { email: 'bob@example.com', name: 'Bob Example' },
  carol: { email: 'carol@example.com', name: 'Carol Example' },
};

const portArg = process.argv[2] ?? process.env.PORT ?? '0';
const port = Number.parseInt(portArg, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port ${JSON.stringify(portArg)}: pass a number 0-65535 (0 picks a free port)`);
  process.exit(2);
}
const seconds = (name, fallback) => {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number.parseInt(raw, 10);
  if (!Number.isInteger(n) || n <= 0) {
    console.error(`invalid ${name}=${JSON.stringify(raw)}: expected a positive number of seconds`);
    process.exit(2);
  }
  return n;
};
const accessTtl = seconds('MARATHON_OIDC_ACCESS_TTL', 5);
const refreshTtl = seconds('MARATHON_OIDC_REFRESH_TTL', 86400);

const stats = {
  refreshes: 0,
  authorization_code_grants: 0,
  device_code_grants: 0,
  grant_errors: 0,
  invalid_grant_errors: 0,
  grants_revoked: 0,
  last_grant_error: null,
};
// grant ids per account, so /test/revoke can find them (the memory adapter
// has no index by account).
const grantsByUser = new Map();

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'marathon',
      client_name: 'marathon',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      redirect_uris: ['http://127.0.0.1/callback'],
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
    },
    {
      client_id: 'resource-server',
      client_secret: 'rs-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      redirect_uris: [],
      response_types: [],
      grant_types: [],
    },
  ],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  issueRefreshToken: async (_ctx, client, code) => client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  conformIdTokenClaims: false,
  scopes: ['openid', 'offline_access', 'email', 'profile'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  ttl: {
    AccessToken: accessTtl,
    AuthorizationCode: 120,
    DeviceCode: 600,
    IdToken: 3600,
    RefreshToken: refreshTtl,
    Grant: refreshTtl,
    Interaction: 600,
    Session: 86400,
  },
  cookies: { keys: ['marathon-test-cookie-key'] },
  findAccount: async (_ctx, id) => {
    const user = USERS[id];
    if (!user) return undefined;
    return {
      accountId: id,
      claims: async () => ({ sub: id, email: user.email, email_verified: true, name: user.name }),
    };
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
});

provider.on('grant.success', (ctx) => {
  const gty = ctx.oidc.params?.grant_type;
  if (gty === 'refresh_token') stats.refreshes += 1;
  else if (gty === 'authorization_code') stats.authorization_code_grants += 1;
  else if (gty === 'urn:ietf:params:oauth:grant-type:device_code') stats.device_code_grants += 1;
});
provider.on('grant.error', (ctx, err) => {
  // Pending device polls are not errors worth counting.
  if (['authorization_pending', 'slow_down'].includes(err.error)) return;
  stats.grant_errors += 1;
  if (err.error === 'invalid_grant') stats.invalid_grant_errors += 1;
  stats.last_grant_error = `${err.error}: ${err.error_detail ?? err.error_description ?? ''}`;
});
provider.on('grant.revoked', () => {
  stats.grants_revoked += 1;
});

function sendJson(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'json';
  ctx.body = body;
}

async function finishInteraction(ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session } = details;
  const login = ctx.query.login || params.login_hint || session?.accountId;
  if (!login || !USERS[login]) {
    sendJson(ctx, 400, { error: 'unknown_user', error_description: `pass ?login=<${Object.keys(USERS).join('|')}> or a login_hint` });
    return;
  }
  const clientId = params.client_id;
  let grant;
  if (details.grantId) {
    grant = await provider.Grant.find(details.grantId);
  }
  if (!grant) {
    grant = new provider.Grant({ accountId: login, clientId });
  }
  if (params.scope) grant.addOIDCScope(params.scope);
  const missingClaims = prompt.details?.missingOIDCClaims;
  if (Array.isArray(missingClaims) && missingClaims.length) grant.addOIDCClaims(missingClaims);
  const grantId = await grant.save();
  if (!grantsByUser.has(login)) grantsByUser.set(login, new Set());
  grantsByUser.get(login).add(grantId);

  const result = { login: { accountId: login }, consent: { grantId } };
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
  // interactionFinished wrote the redirect itself.
  ctx.respond = false;
}

provider.use(async (ctx, next) => {
  const interaction = ctx.path.match(/^\/interaction\/([^/]+)$/);
  if (interaction && ctx.method === 'GET') {
    await finishInteraction(ctx);
    return;
  }
  if (ctx.path === '/test/revoke' && ctx.method === 'POST') {
    const user = ctx.query.user;
    const ids = grantsByUser.get(user) ?? new Set();
    let revoked = 0;
    for (const id of ids) {
      const grant = await provider.Grant.find(id);
      if (grant) {
        await grant.destroy();
        revoked += 1;
      }
    }
    grantsByUser.delete(user);
    stats.grants_revoked += revoked;
    sendJson(ctx, 200, { user, revoked });
    return;
  }
  if (ctx.path === '/test/stats' && ctx.method === 'GET') {
    sendJson(ctx, 200, stats);
    return;
  }
  await next();
});

server.on('request', provider.callback());

const shutdown = () => server.close(() => process.exit(0));
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// The parent (a test) closes our stdin when it goes away; do not outlive it.
process.stdin.on('end', shutdown);
process.stdin.resume();

process.stdout.write(`${JSON.stringify({
  issuer,
  client_id: 'marathon',
  introspection_client_id: 'resource-server',
  introspection_client_secret: 'rs-secret',
  access_token_ttl: accessTtl,
  users: Object.fromEntries(Object.entries(USERS).map(([id, u]) => [id, u.email])),
})}\n`);
