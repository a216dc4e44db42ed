package supervisor

// maxSignal is the highest signal number Darwin has (SIGUSR2).
const maxSignal = 31
