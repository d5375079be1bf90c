"""Ganeti's LUXI protocol on a local Unix socket, so Ganeti's htools (`hbal -L SOCKET -X`, `hinfo -L`,
`hspace -L`) read a Corral cluster and have hbal's moves carried out as Corral's instance jobs."""
