// A real OpenID Connect provider for siesta's tests: node-oidc-provider with its
// development login form (any login name is accepted; no password) and consent.
//
//   node provider.mjs PORT CLIENTS_JSON
//
// CLIENTS_JSON is the list of clients (client_id, client_secret, redirect_uris ...).
// Every account `<name>` has the claims sub=<name>, email=<name>@example.com, name.
import Provider from 'oidc-provider';

const [port, clients] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: JSON.parse(clients),
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.com`, email_verified: true, name: id };
      },
    };
  },
  cookies: { keys: ['siesta-test-only-cookie-key'] },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  pkce: { required: () => true },
});

const server = provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`oidc provider listening at ${issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
