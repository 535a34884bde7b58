"""What sleeping saved: money, energy and CO2e per session and per template.

- `settings`: the `savings:` config section and a template's `resources` (every
  default cited);
- `carbon`: grid intensities (a shipped yearly table, or a user's hourly CSV);
- `costing`: an account (`siesta.ledger`) turned into $, kWh and kg CO2e, actual and
  always-on (the Cloud Carbon Footprint method);
- `keeper`: the live ledger, one account per session, persisted in the store;
- `report`, `charts`, `html`: `siesta report` and the dashboard's numbers and charts;
- `advise`: `siesta advise`, where and when sessions would be cheaper and cleaner;
- `ui`: the dashboard at /ui/ and the savings endpoints of the admin API.
"""
