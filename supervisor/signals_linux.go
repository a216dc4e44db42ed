package supervisor

// maxSignal is the highest signal number Linux has (SIGRTMAX).
const maxSignal = 64
