package systemd

import _ "embed"

// PackagedUnit is visor-agent.service from this directory: the unit the
// .deb and .rpm packages install to /lib/systemd/system/. It equals
// Render(InitSystemd, PackageOptions()); TestPackagedUnit keeps it so.
//
//go:embed visor-agent.service
var PackagedUnit []byte
