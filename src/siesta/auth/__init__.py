"""Who may reach a session (`gateway.auth`) and the admin dashboard (`admin.auth`).

The parts both the gateway and the admin API use, which import neither of them:
`tokens` (each session's access token), `signed` (signed cookies and their key),
`cookies` (reading and removing cookies in raw header values), `forward` (the
forward-auth client and its cache) and `oidc` (the OpenID Connect client). The
gateway's side of the decision, which holds requests and answers them, is
`siesta.gateway.auth`; the allow rule is pure, in `siesta.core.allow`.
"""
