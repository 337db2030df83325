package main

const serviceAbout = `Runs dpgate as a Windows service: the gateway (serve) or the reference
agent (agent), with the same flags and configuration file as on the
command line. The service starts at boot and is restarted after a
failure; a service stop or a Windows shutdown stops it like Ctrl-C (the
gateway drains, the agent sends its shutdown notice). Its log goes to
%ProgramData%\dpgate\NAME.log.

  dpgate service install NAME -- serve -c C:\ProgramData\dpgate\dpgate.yaml
  dpgate service install dpgate-agent -- agent --server GW:13295 --pin PIN --pfx agent.pfx --wake-key KEY --wake-secret-file C:\ProgramData\dpgate\wake.secret
  dpgate service uninstall NAME

Windows only: on Linux the systemd unit (configs/dpgate.service) runs
dpgate, on macOS launchd (configs/dpgate-agent.plist).`
