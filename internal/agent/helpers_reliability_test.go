package agent_test

// relChunkSize keeps the reliability images (built by internal/imagetest)
// small but many-chunked.
const relChunkSize = 64 << 10
