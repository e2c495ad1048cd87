"""The living demo firm: a professional-services firm simulated over business time.

- `plan`: the firm (people, rate cards, clients) and the scenario — every deal, stage change,
  amendment, week of time, billing run and anomaly — generated from one seed, with no wall-clock
  input, so the same seed always gives the same firm.
- `drivers`: thin HTTP clients that act in the vendor sandboxes as the firm's people would
  (a salesperson in Salesforce, consultants in Certinia or Kantata, finance in NetSuite or
  Business Central). They never import pscsync's records.
- `anomalies`: the realistic faults the plan injects, each leaving a precise source condition.
- `operators`: simulated ops staff who fix a share of exceptions after a delay, through the
  source system's API and pscsync's own HTTP interface (the workbench API), like a person.
- `simulator`: runs the plan against the sandboxes over simulated time, steering pscsync's
  shared clock (`PSCSYNC_CLOCK=file:...`).

The simulator never writes pscsync's tables; it reads pscsync only over HTTP, as a user.
"""
