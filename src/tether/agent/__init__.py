"""The endpoint agent: enrollment, the connection to the platform, and the actions it runs.

Never imports the platform or the CLI; OS specifics live behind small interfaces (`state`,
`sysinfo`) so the same code runs as a Linux daemon and a Windows service.
"""
