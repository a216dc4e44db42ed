package registry

// InstanceCounts are instance counts by what an operator acts on, as
// `visor status` and the dashboard show them.
type InstanceCounts struct {
	// Live counts the instances whose state is Live (pending through
	// backoff).
	Live    int `json:"live"`
	Running int `json:"running"`
	// Starting counts pending, claimed and starting instances.
	Starting int `json:"starting"`
	// Unhealthy counts running or starting instances whose health check
	// fails (Instance.Health set); they are also in Running or Starting.
	Unhealthy int `json:"unhealthy"`
	Backoff   int `json:"backoff"`
	Stopping  int `json:"stopping"`
	Failed    int `json:"failed"`
	Lost      int `json:"lost"`
	Exited    int `json:"exited"`
}

// Add counts in.
func (c *InstanceCounts) Add(in Instance) {
	switch in.State {
	case InstanceRunning:
		c.Running++
	case InstancePending, InstanceClaimed, InstanceStarting:
		c.Starting++
	case InstanceBackoff:
		c.Backoff++
	case InstanceStopping:
		c.Stopping++
	case InstanceFailed:
		c.Failed++
	case InstanceLost:
		c.Lost++
	case InstanceExited:
		c.Exited++
	}
	if in.State.Live() {
		c.Live++
	}
	if in.Health != "" && (in.State == InstanceRunning || in.State == InstanceStarting) {
		c.Unhealthy++
	}
}
