package wake

import "syscall"

// BindsToDevice says whether a limited broadcast (Wake-on-LAN to
// 255.255.255.255) is bound to the interface of the device's subnet on
// this platform; elsewhere it leaves through the default route's
// interface, so a device on another directly attached LAN is reached by
// the directed broadcast and the unicast packet only.
const BindsToDevice = false

func sendOptions(fd uintptr, _ string, broadcast bool) error {
	if broadcast {
		return syscall.SetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
	}
	return nil
}
