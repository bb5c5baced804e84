package wireguard

// Device names are "slw" + link ID + "s" (secure end) or "r" (remote end):
// at most 12 characters, and unique host-wide, because wireguard-go's UAPI
// sockets live in /var/run/wireguard/<ifname>.sock whatever the netns.
const devPrefix = "slw"

const (
	roleSecure = "secure"
	roleRemote = "remote"
)

// deviceName returns the interface name of link id's end role.
func deviceName(id, role string) string {
	if role == roleSecure {
		return devPrefix + id + "s"
	}
	return devPrefix + id + "r"
}
