"""Where backends run: `local` (processes on this machine), `keda` (Kubernetes workloads
KEDA scales), and `dispatch` routing each template to its provider."""
